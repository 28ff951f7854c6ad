"""Common given names, used as evidence that a text column holds person names.

A short list of frequent English given names and Chinese surnames in pinyin
(which lead a name written family-name first); a value counts as a person name
only if it also has the shape of two to four capitalized words.
"""

COMMON_GIVEN_NAMES = frozenset(
    """
    james john robert michael william david richard joseph thomas charles
    christopher daniel matthew anthony mark donald steven paul andrew joshua
    kenneth kevin brian george timothy ronald edward jason jeffrey ryan jacob
    gary nicholas eric jonathan stephen larry justin scott brandon benjamin
    samuel gregory alexander frank patrick raymond jack dennis jerry tyler
    aaron jose adam nathan henry douglas zachary peter kyle noah ethan jeremy
    walter christian keith roger terry austin sean gerald carl harold dylan
    arthur lawrence jordan jesse bryan billy bruce gabriel joe logan albert
    willie alan eugene russell vincent philip bobby johnny bradley roy ralph
    mary patricia jennifer linda elizabeth barbara susan jessica sarah karen
    lisa nancy betty sandra margaret ashley kimberly emily donna michelle
    carol amanda melissa deborah stephanie dorothy rebecca sharon laura
    cynthia amy kathleen angela shirley brenda emma anna pamela nicole
    samantha katherine christine helen debra rachel carolyn janet maria
    catherine heather diane olivia julie joyce victoria ruth virginia lauren
    kelly christina joan evelyn judith andrea hannah megan cheryl jacqueline
    martha madison teresa gloria sara janice ann kathryn abigail sophia
    frances jean alice judy isabella julia grace amber denise danielle
    marilyn beverly charlotte natalie theresa diana brittany doris kayla
    alexis lori marie mohamed muhammad ahmed ali fatima omar hassan ibrahim
    juan carlos luis miguel jorge pedro ana carmen rosa lucia sofia
    wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he
    gao lin luo zheng liang xie song tang han feng deng cao peng zeng xiao
    tian dong pan yuan cai jiang yu du ye cheng wei su lu ding ren shen yao
    """.split()
)
